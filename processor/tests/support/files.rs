//! The repository's files, for the tests that check them without any service (the compose
//! file, the Helm chart). Included with `#[path]`, not through `support`, so those test
//! binaries build without the world of the integration tests.

use std::fs;
use std::path::{Path, PathBuf};

use serde_yaml::Value as Yaml;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the processor crate lives one level below the repository root")
        .to_path_buf()
}

pub fn read(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

pub fn load_yaml(path: &Path) -> Yaml {
    serde_yaml::from_str(&read(path))
        .unwrap_or_else(|error| panic!("{} is not valid YAML: {error}", path.display()))
}
