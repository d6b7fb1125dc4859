//! The pgferry plugin SDK.
//!
//! A validation rule is a struct implementing [`Rule`]; a source adapter is a struct
//! implementing [`SourceAdapter`] (or, for the usual managed or self-managed server,
//! [`provider::ProviderAdapter`], which describes it as data). One macro exports them as a
//! WebAssembly component:
//!
//! ```
//! use pgferry_sdk::*;
//!
//! #[derive(Default)]
//! struct NoHugeDatabases;
//!
//! impl Rule for NoHugeDatabases {
//!     fn describe(&self) -> RuleDescriptor {
//!         RuleDescriptor::database("no-huge-databases", "Databases stay under the size limit")
//!     }
//!     fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
//!         let Some(db) = cx.source().database(cx.database_name()) else { return Ok(vec![]) };
//!         Ok(if db.size_bytes > 1 << 40 {
//!             vec![error("database-too-big", "over 1 TiB").on(&db.name).fix("Ask the platform team.")]
//!         } else {
//!             vec![]
//!         })
//!     }
//! }
//!
//! export_rules!(NoHugeDatabases);
//! # fn main() {}
//! ```
//!
//! The plugin's [manifest](Manifest) (contract 0.2.0) comes from the same macro: its id,
//! version and description default to the crate's `name`, `version` and `description`;
//! settings (typed, with defaults), grants and the server settings the plugin reads are
//! declared with `export_rules!(A, B; manifest = Manifest::new("…").setting(…))`, or, for
//! an adapter, by [`SourceAdapter::manifest`]. The runner checks the operator's
//! configuration against it before any migration starts.
//!
//! Build with `cargo build --target wasm32-wasip2`; test natively with [`testing::Fixture`].
//! The generated WIT bindings stay private: authors see only the types re-exported here.

extern crate self as pgferry_sdk;

mod context;
mod findings;
mod inventory;
mod manifest;
pub use manifest::Manifest;
pub use inventory::{normalize_locale, quote_ident, version_cmp};
pub mod provider;
pub mod testing;

pub use context::{Context, Host};
pub use findings::*;

#[doc(hidden)]
pub mod wit {
    wit_bindgen::generate!({
        path: "../wit/since_v0.2.0",
        world: "validation-rule",
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        pub_export_macro: true,
        export_macro_name: "__export_validation_rule",
        default_bindings_module: "::pgferry_sdk::wit",
        runtime_path: "::pgferry_sdk::__private::wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub mod wit_adapter {
    wit_bindgen::generate!({
        path: "../wit/since_v0.2.0",
        world: "source-adapter",
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        pub_export_macro: true,
        export_macro_name: "__export_source_adapter",
        default_bindings_module: "::pgferry_sdk::wit_adapter",
        runtime_path: "::pgferry_sdk::__private::wit_bindgen::rt",
        with: {
            "pgferry:plugin/types@0.2.0": crate::wit::pgferry::plugin::types,
            "pgferry:plugin/host@0.2.0": crate::wit::pgferry::plugin::host,
            "pgferry:plugin/manifest@0.2.0": crate::wit::pgferry::plugin::manifest,
        },
    });
}

/// The contract version this SDK builds plugins for.
pub const CONTRACT_VERSION: &str = "0.2.0";

pub use wit::exports::pgferry::plugin::rules::RuleDescriptor;
pub use wit::pgferry::plugin::host::{LogLevel, QueryResult};
pub use wit::pgferry::plugin::manifest::{Grant, PluginManifest, SettingSpec, SettingType};
pub use wit::pgferry::plugin::types::{
    AvailableExtension, CastInfo, CheckContext, CollationInfo, ColumnInfo, DatabaseInfo,
    DatabaseSummary, ExtensionInfo, Finding, LanguageInfo, Level, MigrationMode, MigrationOption,
    RelationKind, ReplicaIdentity, RoleInfo, SchemaInfo, ServerInfo, Setting, Severity, Side,
    SslMode, TableInfo,
};
pub use wit_adapter::exports::pgferry::plugin::adapter::{
    AdapterInfo, ConnectionDetails, ProviderObjectNames,
};

/// A validation rule. Implement it on a `Default` struct and export it with [`export_rules!`].
pub trait Rule {
    fn describe(&self) -> RuleDescriptor;
    /// Returns the findings; an empty list means the rule passed. `Err` reports that the
    /// rule itself could not run (it is shown as an error naming the plugin).
    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String>;
}

/// A source type. Implement it on a `Default` struct and export it with [`export_adapter!`];
/// a source that differs from the others only in data implements
/// [`provider::ProviderAdapter`] instead, which implements this.
pub trait SourceAdapter {
    /// What the adapter declares about itself beyond its source type: settings, grants,
    /// and the provider's server settings the inventory must read
    /// ([`Manifest::reads_settings`]). Id, version and description default to the crate's.
    fn manifest(&self) -> Manifest {
        Manifest::default()
    }

    fn info(&self) -> AdapterInfo;

    fn normalize_connection(&self, details: ConnectionDetails) -> Result<ConnectionDetails, String> {
        Ok(details)
    }

    fn provider_objects(&self) -> ProviderObjectNames {
        ProviderObjectNames { databases: vec![], roles: vec![], schemas: vec![], extensions: vec![] }
    }

    fn replication_roles(&self) -> Vec<String> {
        vec![]
    }

    fn readiness(&self, _cx: &Context) -> Vec<Finding> {
        vec![]
    }
}

impl RuleDescriptor {
    fn new(id: &str, title: &str, level: Level) -> Self {
        RuleDescriptor {
            id: id.into(),
            title: title.into(),
            level,
            modes: vec![],
            source_types: vec![],
        }
    }
    /// A rule run once per migration.
    pub fn instance(id: &str, title: &str) -> Self {
        Self::new(id, title, Level::Instance)
    }
    /// A rule run once per migrated database.
    pub fn database(id: &str, title: &str) -> Self {
        Self::new(id, title, Level::Database)
    }
    /// Restricts the rule to one migration mode.
    pub fn only_in(mut self, mode: MigrationMode) -> Self {
        self.modes = vec![mode];
        self
    }
    /// Restricts the rule to these source types.
    pub fn for_sources(mut self, ids: &[&str]) -> Self {
        self.source_types = ids.iter().map(|s| s.to_string()).collect();
        self
    }
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    pub use crate::context::WasmHost;
    pub use crate::wit::exports::pgferry::plugin::rules::Guest as RulesGuest;
    pub use crate::manifest::finish;
    pub use crate::wit_adapter::exports::pgferry::plugin::adapter::Guest as AdapterGuest;
}

/// Exports one or more [`Rule`] types (each `Default`) as the plugin's rule set, with the
/// plugin's manifest: `export_rules!(A, B)` declares no settings;
/// `export_rules!(A, B; manifest = Manifest::new("…").setting(SettingSpec::integer("max", "…").with_default(5)))`
/// declares what the expression says. Id, version and description left empty are the
/// crate's `name`, `version` and `description`.
///
/// For native tests it also defines `__PgferryRuleSet` in the calling module:
/// `__PgferryRuleSet::descriptors()` lists the exported rules' descriptors (e.g. to check a
/// README documents every rule), `__PgferryRuleSet::manifest()` the manifest, and
/// `__PgferryRuleSet::run(id, ctx, &fixture)` runs one of them by id, as the runner would.
#[macro_export]
macro_rules! export_rules {
    ($($rule:ty),+ $(,)?) => {
        $crate::export_rules!($($rule),+ ; manifest = $crate::Manifest::default());
    };
    ($($rule:ty),+ ; manifest = $manifest:expr $(,)?) => {
        #[doc(hidden)]
        pub struct __PgferryRuleSet;

        impl __PgferryRuleSet {
            /// The manifest the component exports, as the runner reads it.
            pub fn manifest() -> $crate::PluginManifest {
                $crate::__private::finish(
                    $manifest,
                    env!("CARGO_PKG_NAME"),
                    env!("CARGO_PKG_VERSION"),
                    env!("CARGO_PKG_DESCRIPTION"),
                )
            }

            /// The descriptors of the exported rules, in the order `export_rules!` lists them.
            pub fn descriptors() -> ::std::vec::Vec<$crate::RuleDescriptor> {
                ::std::vec![$(
                    $crate::Rule::describe(&<$rule as ::core::default::Default>::default())
                ),+]
            }

            /// Runs the rule `rule_id` against `host` (the component's imports, or a fixture).
            pub fn run(
                rule_id: &str,
                ctx: $crate::CheckContext,
                host: &dyn $crate::Host,
            ) -> ::core::result::Result<::std::vec::Vec<$crate::Finding>, ::std::string::String> {
                let cx = $crate::Context::new(ctx, host);
                $(
                    let rule = <$rule as ::core::default::Default>::default();
                    if $crate::Rule::describe(&rule).id == rule_id {
                        return $crate::Rule::check(&rule, &cx);
                    }
                )+
                Err(format!("this plugin has no rule `{rule_id}`"))
            }
        }

        impl $crate::__private::RulesGuest for __PgferryRuleSet {
            fn manifest() -> $crate::PluginManifest {
                Self::manifest()
            }
            fn describe() -> ::std::vec::Vec<$crate::RuleDescriptor> {
                Self::descriptors()
            }
            fn check(
                rule_id: ::std::string::String,
                ctx: $crate::CheckContext,
            ) -> ::core::result::Result<::std::vec::Vec<$crate::Finding>, ::std::string::String> {
                Self::run(&rule_id, ctx, &$crate::__private::WasmHost)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::wit::__export_validation_rule!(__PgferryRuleSet with_types_in $crate::wit);
    };
}

/// Exports a [`SourceAdapter`] type (which must be `Default`) as the plugin's adapter; a
/// [`provider::ProviderAdapter`] is one.
#[macro_export]
macro_rules! export_adapter {
    ($adapter:ty) => {
        #[doc(hidden)]
        pub struct __PgferryAdapter;

        impl __PgferryAdapter {
            /// The manifest the component exports, as the runner reads it.
            pub fn manifest() -> $crate::PluginManifest {
                $crate::__private::finish(
                    $crate::SourceAdapter::manifest(&<$adapter as ::core::default::Default>::default()),
                    env!("CARGO_PKG_NAME"),
                    env!("CARGO_PKG_VERSION"),
                    env!("CARGO_PKG_DESCRIPTION"),
                )
            }
        }

        impl $crate::__private::AdapterGuest for __PgferryAdapter {
            fn manifest() -> $crate::PluginManifest {
                Self::manifest()
            }
            fn info() -> $crate::AdapterInfo {
                $crate::SourceAdapter::info(&<$adapter as ::core::default::Default>::default())
            }
            fn normalize_connection(
                details: $crate::ConnectionDetails,
            ) -> ::core::result::Result<$crate::ConnectionDetails, ::std::string::String> {
                $crate::SourceAdapter::normalize_connection(
                    &<$adapter as ::core::default::Default>::default(),
                    details,
                )
            }
            fn provider_objects() -> $crate::ProviderObjectNames {
                $crate::SourceAdapter::provider_objects(&<$adapter as ::core::default::Default>::default())
            }
            fn replication_roles() -> ::std::vec::Vec<::std::string::String> {
                $crate::SourceAdapter::replication_roles(&<$adapter as ::core::default::Default>::default())
            }
            fn readiness(ctx: $crate::CheckContext) -> ::std::vec::Vec<$crate::Finding> {
                let cx = $crate::Context::new(ctx, &$crate::__private::WasmHost);
                $crate::SourceAdapter::readiness(&<$adapter as ::core::default::Default>::default(), &cx)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::wit_adapter::__export_source_adapter!(__PgferryAdapter with_types_in $crate::wit_adapter);
    };
}
