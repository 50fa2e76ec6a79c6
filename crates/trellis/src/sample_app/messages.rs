//! Hand-written protobuf messages of the sample app's gRPC services
//! (`crates/trellis/proto/echo.proto` and the standard `grpc.health.v1`).
//!
//! Kept by hand with `prost` derive because no `protoc` is available; field
//! numbers must stay in sync with the `.proto` files. No logic here.

/// `trellis.sample.v1.EchoRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// Number of answers for `EchoStream`; ignored by `Echo`.
    #[prost(int32, tag = "2")]
    pub count: i32,
    /// When non-zero, the call ends with this `grpc-status`.
    #[prost(int32, tag = "3")]
    pub status_code: i32,
}

/// `trellis.sample.v1.EchoResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoResponse {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(string, tag = "2")]
    pub service: String,
    #[prost(string, tag = "3")]
    pub version: String,
    #[prost(string, tag = "4")]
    pub instance: String,
    #[prost(int32, tag = "5")]
    pub index: i32,
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(enumeration = "ServingStatus", tag = "1")]
    pub status: i32,
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ServingStatus {
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
    ServiceUnknown = 3,
}
