//! Routing: the compiled route table (`config`) and the router filter that forwards to upstream
//! clusters (`router`).

pub mod config;
