//! Where an instance keeps its things. Instances are fully separate, so tests run their own
//! and never touch a real one:
//!
//! - `/sys/fs/bpf/director-fw/NAME/maps/MAP`: pinned maps (counters, flows, policy maps);
//! - `/run/director-fw/NAME.json`: the running agent's description (pid, interfaces, rules);
//! - `/run/director-fw/NAME.sock`: the control socket, and `/var/lib/director-fw/NAME/`: state
//!   kept across restarts (both come with the runtime control plane).

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub const BPFFS: &str = "/sys/fs/bpf";

#[derive(Clone, Debug)]
pub struct Instance {
    pub name: String,
}

/// What a running agent tells other commands about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentInfo {
    pub pid: u32,
    pub interfaces: Vec<String>,
    pub mode: String,
    /// The policy file, or `None` for the built-in profile.
    pub policy_file: Option<PathBuf>,
    pub audit: bool,
    /// Rule ids by index, as the kernel counts them.
    pub rules: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("invalid instance name {0:?}: use 1-32 letters, digits, '-' or '_'")]
    BadName(String),
    #[error("no director-fw agent runs for instance {0:?} (nothing at {1}); start one with `director-fw run`")]
    NotRunning(String, String),
    #[error("instance {0:?} is already run by agent pid {1}; stop it first or use --instance")]
    AlreadyRunning(String, u32),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: {1}")]
    Corrupt(String, serde_json::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstanceError + '_ {
    move |err| InstanceError::Io(path.display().to_string(), err)
}

impl Instance {
    pub fn new(name: &str) -> Result<Instance, InstanceError> {
        let ok = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(InstanceError::BadName(name.to_string()));
        }
        Ok(Instance {
            name: name.to_string(),
        })
    }

    pub fn pin_dir(&self) -> PathBuf {
        Path::new(BPFFS).join("director-fw").join(&self.name)
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.pin_dir().join("maps")
    }

    pub fn map_pin(&self, map: &str) -> PathBuf {
        self.maps_dir().join(map)
    }

    pub fn info_file(&self) -> PathBuf {
        Path::new("/run/director-fw").join(format!("{}.json", self.name))
    }

    /// The running agent's description, or `NotRunning`.
    pub fn agent(&self) -> Result<AgentInfo, InstanceError> {
        let path = self.info_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.not_running());
            }
            Err(err) => return Err(io(&path)(err)),
        };
        let info: AgentInfo = serde_json::from_str(&text)
            .map_err(|err| InstanceError::Corrupt(path.display().to_string(), err))?;
        if !process_alive(info.pid) {
            return Err(self.not_running());
        }
        Ok(info)
    }

    fn not_running(&self) -> InstanceError {
        InstanceError::NotRunning(self.name.clone(), self.info_file().display().to_string())
    }

    /// Refuses when another live agent runs this instance; clears what a dead one left.
    pub fn claim(&self) -> Result<(), InstanceError> {
        match self.agent() {
            Ok(info) if info.pid != std::process::id() => {
                return Err(InstanceError::AlreadyRunning(self.name.clone(), info.pid))
            }
            Ok(_) | Err(InstanceError::NotRunning(..)) | Err(InstanceError::Corrupt(..)) => {}
            Err(err) => return Err(err),
        }
        self.release();
        Ok(())
    }

    /// Writes the agent's description atomically (write, then rename).
    pub fn publish(&self, info: &AgentInfo) -> Result<(), InstanceError> {
        let path = self.info_file();
        let dir = path.parent().expect("has a parent");
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(info).expect("serializable");
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(text.as_bytes()).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Removes the pins and the agent's description. Missing ones are fine.
    pub fn release(&self) {
        let _ = std::fs::remove_dir_all(self.pin_dir());
        let _ = std::fs::remove_file(self.info_file());
    }
}

fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}
