//! Build script: makes cargo rebuild the engine when a migration is added or changed (they are
//! embedded with `include_dir!`). Building the plugins in `plugins/` arrives with the plugin host.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
