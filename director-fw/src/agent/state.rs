//! What the agent keeps across restarts, in `/var/lib/director-fw/INSTANCE/state.json`:
//! the runtime peers and the counter slot of each rule id. Written whole to a temporary file,
//! synced and renamed over the old one, so a crash leaves the old state or the new one.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::slots::RuleSlots;
use crate::policy::RuntimePeers;

const VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub peers: RuntimePeers,
    #[serde(default)]
    pub rule_slots: RuleSlots,
    /// The counter row of each interface.
    #[serde(default)]
    pub interface_rows: super::rows::RowsByName,
    /// `audit on|off`: it holds across reloads and restarts until the next `audit`.
    #[serde(default)]
    pub audit: Option<bool>,
    /// A reload waiting for `policy confirm`, so that an agent that stops inside the window
    /// still reverts it when it starts again.
    #[serde(default)]
    pub pending: Option<PendingState>,
}

/// What a reload with `--confirm-within` reverts to, and by when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingState {
    /// Seconds since the epoch.
    pub deadline: u64,
    /// SHA-256 of the unconfirmed policy's text.
    pub unconfirmed: String,
    /// The policy before the reload: its file and its text then.
    pub file: Option<std::path::PathBuf>,
    pub text: Option<String>,
    pub peers: RuntimePeers,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a director-fw state file ({source}); move it away to start without runtime peers")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{path}: state version {found}, this agent knows {VERSION}; use the agent that wrote it"
    )]
    Version { path: PathBuf, found: u32 },
}

impl State {
    /// The saved state; none saved yet is the empty state.
    pub fn load(path: &Path) -> Result<State, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.into(),
                    source,
                })
            }
        };
        let state: State = serde_json::from_str(&text).map_err(|source| StateError::Corrupt {
            path: path.into(),
            source,
        })?;
        if state.version > VERSION {
            return Err(StateError::Version {
                path: path.into(),
                found: state.version,
            });
        }
        Ok(state)
    }

    /// Writes the state atomically: a temporary file, fsync, rename, fsync of the directory.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = path.with_extension("json.tmp");
        let state = State {
            version: VERSION,
            ..self.clone()
        };
        let text = serde_json::to_string_pretty(&state).expect("state serializes");
        let mut file = File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(text.as_bytes()).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_atomically() {
        let dir = std::env::temp_dir().join(format!("dfw-state-{}", std::process::id()));
        let path = dir.join("state.json");
        assert_eq!(State::load(&path).unwrap(), State::default());
        let policy = crate::Policy::builtin();
        let state = State {
            version: VERSION,
            peers: RuntimePeers::default()
                .add(&policy, "director", &["198.18.2.10".into()])
                .unwrap(),
            rule_slots: RuleSlots::default().assign(&policy).table,
            audit: Some(true),
            pending: None,
            interface_rows: [("eth1".into(), 1)].into(),
        };
        state.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), state);
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::write(&path, "{ not json").unwrap();
        let err = State::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("state.json") && err.contains("move it away"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
