//! PeerAuthentication: which mTLS mode a sidecar's captured inbound port accepts.

use crate::Context;
use crate::mtls::InboundMode;

/// The mode of target port `port` of the proxy's workload.
pub(crate) fn inbound_mode(_ctx: &Context<'_>, _port: u32) -> InboundMode {
    InboundMode::Permissive
}
