//! The node's configuration file: `Config::load(Some(file), …)`, what
//! `xarxa run --config FILE` does (defaults, then the TOML file, then
//! `XARXA_*` variables, then validation). Each input is written to one temp
//! file per fuzzing process and loaded from there. Also `toml::from_str`
//! then `validate()`, the path without figment.
//!
//! Checks: nothing panics; a configuration that loads is valid, and the
//! commented example generated from it (`example_toml`, what `xarxa init`
//! writes) loads back to the same configuration.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use xarxa_node::config::{example_toml, Config, Overrides};

static FILE: LazyLock<PathBuf> =
    LazyLock::new(|| std::env::temp_dir().join(format!("xarxa-fuzz-config-{}.toml", std::process::id())));

fn load(text: &[u8]) -> Result<Config, xarxa_node::config::ConfigError> {
    std::fs::write(&*FILE, text).unwrap_or_else(|e| panic!("{}: {e}", FILE.display()));
    Config::load(Some(FILE.as_path()), &Overrides::default())
}

fuzz_target!(
    init: {
        // Only the file under test: no XARXA_* variable from the environment.
        let vars: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| k.starts_with("XARXA_"))
            .collect();
        for k in vars {
            std::env::remove_var(k);
        }
    },
    |data: &[u8]| {
        if let Ok(config) = load(data) {
            assert!(config.validate().is_ok(), "a loaded configuration is invalid");
            assert!(config.zone_name().is_ok());
            // Every deadline the node computes from a setting can be formed.
            for (field, value, _) in config.durations() {
                assert!(std::time::Instant::now().checked_add(value * 100).is_some(), "{field} overflows");
            }
            for d in [config.mesh.request_timeout, config.mesh.idle_timeout, config.mesh.claim_ttl] {
                assert!(std::time::Instant::now().checked_add(config.mesh.stretch(d)).is_some());
            }
            let example = example_toml(&config);
            let parsed: Config = toml::from_str(&example)
                .unwrap_or_else(|e| panic!("the example of a loaded configuration does not parse: {e}\n{example}"));
            assert_eq!(parsed, config, "the example does not hold the configuration's values\n{example}");
            let again = load(example.as_bytes())
                .unwrap_or_else(|e| panic!("the example of a loaded configuration does not load: {e}\n{example}"));
            assert_eq!(again, config, "the example loads to another configuration\n{example}");
        }

        if let Ok(text) = std::str::from_utf8(data) {
            if let Ok(config) = toml::from_str::<Config>(text) {
                let _ = config.validate();
            }
        }
    }
);
