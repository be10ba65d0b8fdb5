//! `nestr-sdk`: what an operation plugin author depends on — the bindings generated from the WIT
//! contract in `wit/`, helpers, and the export macro. The contract and bindings arrive with the
//! "Operation plugins" issue; this crate exists now so that the workspace layout is final.
