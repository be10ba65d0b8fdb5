//! The `bindgen!` sites: host bindings of the `operation` world, for the current contract
//! (`wit/plugin.wit`, `nestr:plugin@0.2.0`) and for every older one the engine still loads
//! ([`v0_1`], from `wit/frozen/0.1`). Imports and exports are async so that the wall-clock
//! deadline can drop a call blocked in a host function.
//!
//! One host serves both: an older plugin's imports are implemented by converting to the current
//! types and calling the current implementation ([`super::compat`]), so a rule the host enforces
//! is written once.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "operation",
    imports: { default: async },
    exports: { default: async },
});

pub use self::nestr::plugin::types;

/// `nestr:plugin@0.1.0`, frozen.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/frozen/0.1",
        world: "operation",
        imports: { default: async },
        exports: { default: async },
    });

    pub use self::nestr::plugin::types;
}
