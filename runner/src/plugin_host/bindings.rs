//! Host-side bindings of contract 0.1.0. The inventory types double as the runner's own
//! inventory model, so they also derive serde (an inventory dump is an SDK test fixture).
//! Only the types are public; the generated modules stay inside the plugin host.

pub(super) mod generated {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.0",
        world: "validation-rule",
        imports: { default: async },
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });

    pub mod adapter {
        wasmtime::component::bindgen!({
            path: "../wit/since_v0.1.0",
            world: "source-adapter",
            imports: { default: async },
            exports: { default: async },
            additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
            with: {
                "pgferry:plugin/types": super::pgferry::plugin::types,
                "pgferry:plugin/host": super::pgferry::plugin::host,
            },
        });
    }
}

pub use generated::adapter::exports::pgferry::plugin::adapter::{AdapterInfo, ConnectionDetails, ProviderObjectNames};
pub use generated::exports::pgferry::plugin::rules::RuleDescriptor;
pub use generated::pgferry::plugin::host::{LogLevel, QueryResult};
pub use generated::pgferry::plugin::types::*;
