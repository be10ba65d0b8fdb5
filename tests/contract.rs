//! The plugin contract's versioning rule: frozen copies never change, and `wit/plugin.wit` may
//! only differ from the frozen copy of its own version by carrying a new version.

use std::path::Path;

use crate::support::TestResult;

fn wit() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit")
}

/// sha256 of every frozen file, recorded when it was frozen.
const FROZEN: &[(&str, &str)] = &[
    (
        "0.1/plugin.wit",
        include_str!("../wit/frozen/0.1/plugin.wit.sha256"),
    ),
    (
        "0.2/plugin.wit",
        include_str!("../wit/frozen/0.2/plugin.wit.sha256"),
    ),
];

#[test]
fn frozen_contracts_never_change() -> TestResult {
    use sha2::Digest;
    for (file, sum) in FROZEN {
        let bytes = std::fs::read(wit().join("frozen").join(file))?;
        let actual = hex::encode(sha2::Sha256::digest(&bytes));
        assert_eq!(
            actual,
            sum.trim(),
            "wit/frozen/{file} changed: frozen contracts are never edited; bump the version instead"
        );
    }
    Ok(())
}

#[test]
fn the_current_contract_matches_the_frozen_copy_of_its_version() -> TestResult {
    let current = std::fs::read_to_string(wit().join("plugin.wit"))?;
    let version = current
        .lines()
        .find_map(|l| l.strip_prefix("package nestr:plugin@"))
        .map(|v| v.trim_end_matches(';').to_string())
        .ok_or("no package line")?;
    assert_eq!(format!("nestr:plugin@{version}"), nestr::plugin::CONTRACT);
    let mut parts = version.split('.');
    let (major, minor) = (parts.next().unwrap_or("0"), parts.next().unwrap_or("0"));
    let frozen_dir = if major == "0" {
        format!("{major}.{minor}")
    } else {
        major.to_string()
    };
    // Every released version has its frozen copy: a bump without one fails here, not silently.
    let frozen = wit().join("frozen").join(&frozen_dir).join("plugin.wit");
    assert!(
        frozen.is_file(),
        "no wit/frozen/{frozen_dir}/plugin.wit for nestr:plugin@{version}: copy wit/plugin.wit \
         there, record its sha256 in FROZEN and in plugin.wit.sha256"
    );
    assert!(
        FROZEN
            .iter()
            .any(|(f, _)| *f == format!("{frozen_dir}/plugin.wit")),
        "wit/frozen/{frozen_dir}/plugin.wit is not in FROZEN, so nothing keeps it from changing"
    );
    assert_eq!(
        std::fs::read_to_string(&frozen)?,
        current,
        "plugin.wit differs from wit/frozen/{frozen_dir}: bump the version"
    );
    Ok(())
}
