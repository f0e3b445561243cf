//! Every path of an instance, in one place. Instances are fully separate, so tests run their
//! own and never touch a real one:
//!
//! - `/sys/fs/bpf/director-fw/NAME/`: the pinned datapath (see `datapath::Pins`);
//! - `/run/director-fw/NAME.sock`: the running agent's control socket;
//! - `/run/director-fw/NAME.lock`: held (flock) by the agent that runs the instance;
//! - `/var/lib/director-fw/NAME/state.json`: what the agent keeps across restarts (runtime
//!   peers, the counter slot of each rule id).

use std::{
    fs::File,
    io::{Read, Seek, Write},
    path::{Path, PathBuf},
};

use crate::datapath::Pins;

pub const BPFFS: &str = "/sys/fs/bpf";
const RUN_DIR: &str = "/run/director-fw";
const STATE_DIR: &str = "/var/lib/director-fw";
/// `statfs(2)` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Clone, Debug)]
pub struct Instance {
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("invalid instance name {0:?}: use 1-32 letters, digits, '-' or '_'")]
    BadName(String),
    #[error("instance {name:?} is already run by agent pid {pid} (it holds {lock}); stop it first, or use --instance")]
    AlreadyRunning {
        name: String,
        pid: String,
        lock: String,
    },
    #[error("{BPFFS} is not a bpf filesystem and mounting one there failed ({0}). Mount it with `mount -t bpf bpf {BPFFS}`")]
    NoBpffs(std::io::Error),
    #[error("{BPFFS} is not a bpf filesystem in this mount namespace, which is not the host's (`ip netns exec` gives commands a private /sys that hides it; a service's sandbox has a namespace of its own). Pins made here would vanish with the namespace and take the firewall with them. Mount bpffs on the host (`mount -t bpf bpf {BPFFS}`), and run director-fw with `nsenter --net=/run/netns/NAME director-fw ...` rather than `ip netns exec`")]
    PrivateSys,
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstanceError + '_ {
    move |err| InstanceError::Io(path.display().to_string(), err)
}

/// Held while an agent runs the instance: an exclusive flock on the lock file, released by
/// the kernel when the process exits however it exits.
#[derive(Debug)]
pub struct Lock {
    _file: File,
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

    pub fn pins(&self) -> Pins {
        Pins::new(self.pin_dir())
    }

    pub fn socket(&self) -> PathBuf {
        Path::new(RUN_DIR).join(format!("{}.sock", self.name))
    }

    pub fn lock_file(&self) -> PathBuf {
        Path::new(RUN_DIR).join(format!("{}.lock", self.name))
    }

    pub fn state_dir(&self) -> PathBuf {
        Path::new(STATE_DIR).join(&self.name)
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("state.json")
    }

    /// Claims the instance for this process, or names the agent that has it. The lock is
    /// the kernel's, so a killed agent never leaves a stale claim behind.
    pub fn lock(&self) -> Result<Lock, InstanceError> {
        let path = self.lock_file();
        std::fs::create_dir_all(RUN_DIR).map_err(io(Path::new(RUN_DIR)))?;
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        if file.try_lock().is_err() {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(InstanceError::AlreadyRunning {
                name: self.name.clone(),
                pid: pid.trim().to_string(),
                lock: path.display().to_string(),
            });
        }
        file.set_len(0).map_err(io(&path))?;
        file.rewind().map_err(io(&path))?;
        writeln!(file, "{}", std::process::id()).map_err(io(&path))?;
        Ok(Lock { _file: file })
    }
}

/// Makes sure `/sys/fs/bpf` is a bpf filesystem, mounting one if it is not: pins need it.
/// In a mount namespace of its own (`ip netns exec`) it refuses instead, because a bpffs
/// mounted there would be private and short-lived.
pub fn ensure_bpffs() -> Result<(), InstanceError> {
    let path = std::ffi::CString::new(BPFFS).expect("no NUL");
    // SAFETY: statfs fills a zeroed struct from a valid path.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    {
        return Ok(());
    }
    let namespace = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    if namespace("self") != namespace("1") {
        return Err(InstanceError::PrivateSys);
    }
    let _ = std::fs::create_dir_all(BPFFS);
    let fstype = std::ffi::CString::new("bpf").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(InstanceError::NoBpffs(std::io::Error::last_os_error()));
    }
    Ok(())
}
