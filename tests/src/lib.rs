//! Test harness: throwaway PostgreSQL clusters, test certificates and skip helpers.
//!
//! See [`cluster`] for how clusters are made fast and isolated; tests start one with
//! `Cluster::builder().start()?` and drop it when done.

pub mod certs;
pub mod cli;
pub mod cluster;
pub mod compare;
pub mod proxy;
pub mod support;

pub use cli::{stabilize, CliOutput, Pgferry, Served};
pub use certs::{TestCerts, test_ca_and_server_cert};
pub use proxy::Proxy;
pub use cluster::{
    Cluster, ClusterBuilder, DEFAULT_VERSION, PsqlOutput, TmpfsMount, pg_available, pg_bin_dir,
    workspace_root,
};
pub use support::corpus_dir;
