//! The HTTP connection manager (`envoy.filters.network.http_connection_manager`): request
//! validation, header rules, route selection, the filter chain, and local replies.

pub mod codec;
pub mod conn_manager;
pub mod headers;
pub mod http2;
pub mod stream_timers;
pub mod local_reply;
