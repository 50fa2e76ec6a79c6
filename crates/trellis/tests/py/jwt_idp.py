"""A tiny identity provider for the JWT end-to-end tests, built on standard libraries only
(PyJWT + cryptography): it holds signing keys, publishes a JWKS over HTTP and mints tokens.

Usage: python3 jwt_idp.py PORT [TLS_DIR]
  With TLS_DIR it serves HTTPS: it writes a fresh CA to TLS_DIR/ca.pem and serves with a
  certificate from that CA for 127.0.0.1 and localhost.
  GET /jwks.json                       the published keys (each fetch is counted)
  GET /hits                            how many times /jwks.json was fetched
  GET /add?kid=K&kind=rsa|ec           create a key (not yet published)
  GET /publish?kids=K1,K2              publish exactly these keys
  GET /token?kid=K&alg=RS256&iss=I&sub=S&aud=A[&aud=B]&exp_in=SECONDS[&nbf_in=SECONDS]
                                       a token signed with key K (claims also: group=admins)
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

KEYS = {}
PUBLISHED = []
HITS = [0]


def add_key(kid, kind):
    if kind == "ec":
        KEYS[kid] = ec.generate_private_key(ec.SECP256R1())
    else:
        KEYS[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks():
    out = []
    for kid in PUBLISHED:
        key = KEYS[kid]
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        else:
            jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
        jwk.update({"kid": kid, "use": "sig"})
        out.append(jwk)
    return {"keys": out}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="text/plain"):
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        q = parse_qs(url.query)
        one = lambda k, d=None: q.get(k, [d])[0]
        if url.path == "/jwks.json":
            HITS[0] += 1
            return self.reply(200, json.dumps(jwks()), "application/json")
        if url.path == "/hits":
            return self.reply(200, str(HITS[0]))
        if url.path == "/add":
            add_key(one("kid"), one("kind", "rsa"))
            return self.reply(200, "ok")
        if url.path == "/publish":
            PUBLISHED[:] = [k for k in one("kids", "").split(",") if k]
            return self.reply(200, "ok")
        if url.path == "/token":
            now = int(time.time())
            claims = {
                "iss": one("iss"),
                "sub": one("sub", "alice"),
                "exp": now + int(one("exp_in", "600")),
                "iat": now,
                "group": "admins",
            }
            if "aud" in q:
                claims["aud"] = q["aud"] if len(q["aud"]) > 1 else q["aud"][0]
            if "nbf_in" in q:
                claims["nbf"] = now + int(one("nbf_in"))
            kid = one("kid")
            token = jwt.encode(claims, KEYS[kid], algorithm=one("alg", "RS256"), headers={"kid": kid})
            return self.reply(200, token)
        return self.reply(404, "not found")


def tls_context(directory):
    import datetime
    import ipaddress
    import os
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("jwt-idp test CA"))
        .issuer_name(name("jwt-idp test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - day)
        .not_valid_after(now + day)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - day)
        .not_valid_after(now + day)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    with open(os.path.join(directory, "ca.pem"), "wb") as f:
        f.write(ca.public_bytes(pem))
    cert_path = os.path.join(directory, "server.pem")
    key_path = os.path.join(directory, "server.key")
    with open(cert_path, "wb") as f:
        f.write(leaf.public_bytes(pem))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


if __name__ == "__main__":
    ctx = tls_context(sys.argv[2]) if len(sys.argv) > 2 else None
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    if ctx:
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("listening", server.server_address[1], flush=True)
    server.serve_forever()
