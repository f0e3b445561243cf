//! The agent's side of the control socket: a Unix socket that only root (or a holder of
//! CAP_NET_ADMIN) may use. The socket file is mode 0600, and the kernel's peer credentials of
//! every connection are checked as well, so that a socket file whose mode was loosened, or a
//! caller that has dropped root, is still refused.

use std::{os::unix::fs::PermissionsExt, path::PathBuf, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use super::protocol::{Envelope, Request, Response, PROTOCOL_VERSION};
use crate::instance::Instance;

/// A client has this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bit of CAP_NET_ADMIN in a capability set.
const CAP_NET_ADMIN: u32 = 12;
/// A request line longer than this is not one of ours.
const MAX_REQUEST: usize = 1 << 20;

pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds the instance's socket. The caller holds the instance's lock, so a socket file
    /// that is there already was left by a dead agent and is replaced.
    pub fn bind(instance: &Instance) -> std::io::Result<Server> {
        let path = instance.socket();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(&path);
        // Created under a umask that leaves the owner alone, then set exactly.
        // SAFETY: umask only changes this process's file-creation mask.
        let old = unsafe { libc::umask(0o177) };
        let listener = UnixListener::bind(&path);
        unsafe { libc::umask(old) };
        let listener = listener?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Server { listener, path })
    }

    pub async fn accept(&self) -> std::io::Result<Connection> {
        let (stream, _) = self.listener.accept().await?;
        Ok(Connection { stream })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub struct Connection {
    stream: UnixStream,
}

impl Connection {
    /// Reads the request, once the caller is known to be allowed. An `Err` is the response
    /// that refuses it.
    pub async fn request(&mut self) -> Result<Request, Response> {
        let refuse = |message: String| Response::Error { message };
        // The request is read first, also from a caller that is then refused, so that the
        // caller is done writing when the refusal comes.
        let mut line = String::new();
        let mut reader = BufReader::new((&mut self.stream).take(MAX_REQUEST as u64));
        let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
        let cred = self
            .stream
            .peer_cred()
            .map_err(|err| refuse(format!("cannot read the caller's credentials: {err}")))?;
        if !allowed(cred.uid(), cred.pid()) {
            return Err(refuse(format!(
                "permission denied: the director-fw agent takes commands from root or a process with CAP_NET_ADMIN only (caller uid {})",
                cred.uid()
            )));
        }
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return Err(refuse(format!("reading the request: {err}"))),
            Err(_) => return Err(refuse("no request within 5 s".into())),
        }
        let envelope: Envelope<serde_json::Value> = serde_json::from_str(&line)
            .map_err(|err| refuse(format!("not a director-fw request: {err}")))?;
        if envelope.version != PROTOCOL_VERSION {
            return Err(refuse(format!(
                "this agent speaks control protocol {PROTOCOL_VERSION}, the command {}; use the director-fw binary of the running agent",
                envelope.version
            )));
        }
        serde_json::from_value(envelope.body)
            .map_err(|err| refuse(format!("not a request this agent knows: {err}")))
    }

    pub async fn respond(mut self, response: Response) {
        let mut line = serde_json::to_string(&Envelope {
            version: PROTOCOL_VERSION,
            body: response,
        })
        .expect("responses serialize");
        line.push('\n');
        // A client that went away, or stopped reading, gets nothing: the change it asked for
        // stands, and the agent goes on serving.
        let write = async {
            self.stream.write_all(line.as_bytes()).await?;
            self.stream.shutdown().await
        };
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, write).await;
    }
}

impl Connection {
    /// Sends every event from `events` as a response line until the client hangs up or stops
    /// reading for longer than a request may take. A client that falls behind misses events
    /// rather than holding the agent up.
    pub async fn stream(
        mut self,
        mut events: tokio::sync::broadcast::Receiver<super::protocol::DropEventView>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            let mut line = serde_json::to_string(&Envelope {
                version: PROTOCOL_VERSION,
                body: Response::DropEvent(event),
            })
            .expect("responses serialize");
            line.push('\n');
            let write = self.stream.write_all(line.as_bytes());
            match tokio::time::timeout(REQUEST_TIMEOUT, write).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }
}

/// Root, or a process whose effective capabilities include CAP_NET_ADMIN.
fn allowed(uid: u32, pid: Option<i32>) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(pid) = pid else { return false };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}
