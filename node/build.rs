//! Builds the browser client (`client-wasm/`) for `wasm32-unknown-unknown`
//! and generates its JavaScript glue with wasm-bindgen, so that the node
//! binary embeds and serves the web client with no manual build step.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    if let Err(e) = build_client() {
        // Say what is wrong and how to fix it, then fail the build.
        eprintln!("error: building the web client failed: {e}");
        std::process::exit(1);
    }
}

fn build_client() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest.parent().ok_or("no workspace root")?.to_path_buf();
    for watched in ["client-wasm/src", "client-wasm/static", "client-wasm/Cargo.toml", "signalling/src"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let target_root = env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let target_dir = target_root.join("wasm-client");
    ensure_wasm_target()?;
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "-p", "xarxa-client", "--lib", "--target", "wasm32-unknown-unknown"])
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"));
    // The outer build's flags are for the host, not for wasm.
    for var in
        ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET"]
    {
        cmd.env_remove(var);
    }
    if env::var("CARGO_NET_OFFLINE").is_ok() {
        cmd.arg("--offline");
    }
    let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build of xarxa-client for wasm32 failed ({status})"));
    }
    let wasm = target_dir.join("wasm32-unknown-unknown/release/xarxa_client.wasm");
    let web = out.join("web");
    std::fs::create_dir_all(&web).map_err(|e| e.to_string())?;
    let mut bindgen = wasm_bindgen_cli_support::Bindgen::new();
    bindgen.input_path(&wasm).web(true).map_err(|e| e.to_string())?.typescript(false);
    bindgen.generate(&web).map_err(|e| format!("wasm-bindgen: {e}"))?;
    check(&web.join("xarxa_client.js"))?;
    check(&web.join("xarxa_client_bg.wasm"))
}

fn check(p: &Path) -> Result<(), String> {
    if p.exists() {
        Ok(())
    } else {
        Err(format!("{} was not generated", p.display()))
    }
}

/// Makes sure the standard library for wasm32 is installed, installing it
/// with rustup if it is not.
fn ensure_wasm_target() -> Result<(), String> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", "wasm32-unknown-unknown"])
        .output()
        .map_err(|e| format!("running rustc: {e}"))?;
    let dir = String::from_utf8_lossy(&libdir.stdout).trim().to_string();
    if libdir.status.success()
        && Path::new(&dir).join("..").exists()
        && std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some())
    {
        return Ok(());
    }
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-unknown-unknown"])
        .status()
        .map_err(|e| format!("the wasm32-unknown-unknown target is missing and rustup could not run ({e}); install it with: rustup target add wasm32-unknown-unknown"))?;
    if status.success() {
        Ok(())
    } else {
        Err("the wasm32-unknown-unknown target is missing; install it with: rustup target add wasm32-unknown-unknown"
            .into())
    }
}
