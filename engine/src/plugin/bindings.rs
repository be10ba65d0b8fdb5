//! The one `bindgen!` site: host bindings of the `operation` world in `wit/`. Imports and
//! exports are async so that the wall-clock deadline can drop a call blocked in a host function.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "operation",
    imports: { default: async },
    exports: { default: async },
});

pub use self::nestr::plugin::types;
