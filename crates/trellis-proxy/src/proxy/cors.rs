//! Envoy's CORS filter for one request. A preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) from an allowed origin is answered by the proxy; one from
//! another origin is forwarded, or answered without CORS headers when
//! `forward_not_matching_preflights` is false. Any other request from an allowed origin gets
//! `Access-Control-Allow-Origin` (and credentials / expose headers) on its response; a request
//! from an origin not allowed gets no CORS headers.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::Local;
use crate::runtime::route::policy::Cors;

pub enum Decision {
    /// The proxy answers (a preflight).
    Respond(Local),
    /// Go on; these headers go on the response (the origin is allowed).
    Forward(Option<HeaderMap>),
}

pub fn on_request(c: &Cors, parts: &Parts) -> Decision {
    let Some(origin) = parts.headers.get(ORIGIN) else {
        return Decision::Forward(None);
    };
    let allowed = origin.to_str().is_ok_and(|o| !o.is_empty() && c.allows(o));
    let preflight = parts.method == Method::OPTIONS
        && parts
            .headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|m| !m.is_empty());
    if preflight {
        if !allowed {
            if c.forward_unmatched_preflights {
                return Decision::Forward(None);
            }
            return Decision::Respond(Local::new(StatusCode::OK, "-", String::new()));
        }
        let mut h = HeaderMap::new();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if c.allow_credentials {
            h.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        for (name, value) in [
            (ACCESS_CONTROL_ALLOW_METHODS, &c.allow_methods),
            (ACCESS_CONTROL_ALLOW_HEADERS, &c.allow_headers),
            (ACCESS_CONTROL_MAX_AGE, &c.max_age),
        ] {
            if let Some(v) = value {
                h.insert(name, v.clone());
            }
        }
        let mut local = Local::new(StatusCode::OK, "-", String::new());
        local.headers = Some(Box::new(h));
        return Decision::Respond(local);
    }
    if !allowed {
        return Decision::Forward(None);
    }
    let mut h = HeaderMap::new();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if c.allow_credentials {
        h.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(v) = &c.expose_headers {
        h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
    }
    Decision::Forward(Some(h))
}
