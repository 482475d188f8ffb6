//! The state store: every binding, written to `<state-dir>/bindings.json`
//! before the routes that depend on it change (write to a temporary file,
//! fsync, rename, fsync the directory), so a crash never leaves a route
//! that the store does not explain.

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::binding::Binding;

const FILE: &str = "bindings.json";
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error("state file {path} is not valid: {source}")]
    Parse { path: PathBuf, #[source] source: serde_json::Error },
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    bindings: Vec<Binding>,
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        fs::create_dir_all(dir).map_err(|source| StateError::Io { path: dir.into(), source })?;
        Ok(Store { dir: dir.into() })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Bindings from the last snapshot (none if there is no file yet).
    pub fn load(&self) -> Result<Vec<Binding>, StateError> {
        load(&self.path())
    }

    pub fn save<'a>(&self, bindings: impl Iterator<Item = &'a Binding>) -> Result<(), StateError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let snap = Snapshot { version: VERSION, bindings: bindings.cloned().collect() };
        let io = |source| StateError::Io { path: path.clone(), source };
        let mut f = File::create(&tmp).map_err(io)?;
        serde_json::to_writer(&mut f, &snap).map_err(|e| io(e.into()))?;
        f.write_all(b"\n").map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }
}

pub fn load(path: &Path) -> Result<Vec<Binding>, StateError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<Snapshot>(&bytes)
            .map(|s| s.bindings)
            .map_err(|source| StateError::Parse { path: path.into(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(source) => Err(StateError::Io { path: path.into(), source }),
    }
}
