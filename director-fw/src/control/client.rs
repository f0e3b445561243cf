//! The client side of the control socket, used by every command but `run`, `policy check`
//! and `detach` without an agent.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use super::protocol::{Envelope, Request, Response, PROTOCOL_VERSION};
use crate::instance::Instance;

/// A reload of a million peers takes seconds; nothing the agent does takes this long.
const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no director-fw agent runs for instance {instance:?} (nothing listens on {socket}); start one with `director-fw run`")]
    NotRunning { instance: String, socket: PathBuf },
    #[error("talking to the agent on {socket}: {source}")]
    Io {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent on {socket} answered something this command cannot read ({detail}); is it a different director-fw version?")]
    Garbled { socket: PathBuf, detail: String },
    #[error("{0}")]
    Refused(String),
}

pub struct Client {
    socket: PathBuf,
    stream: UnixStream,
}

impl Client {
    /// Connects to the instance's agent, or says that none runs.
    pub fn connect(instance: &Instance) -> Result<Client, ClientError> {
        let socket = instance.socket();
        let stream = UnixStream::connect(&socket).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning {
                    instance: instance.name.clone(),
                    socket: socket.clone(),
                }
            }
            std::io::ErrorKind::PermissionDenied => ClientError::Refused(format!(
                "permission denied: {} is root's only; run director-fw as root (or with CAP_NET_ADMIN and access to the socket)",
                socket.display()
            )),
            _ => ClientError::Io {
                socket: socket.clone(),
                source: err,
            },
        })?;
        let io = |source| ClientError::Io {
            socket: socket.clone(),
            source,
        };
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        Ok(Client { socket, stream })
    }

    /// Sends a request whose answer is a stream, and hands every response to `each` until the
    /// agent closes the connection or `each` returns false.
    pub fn follow(
        mut self,
        request: Request,
        mut each: impl FnMut(Response) -> bool,
    ) -> Result<(), ClientError> {
        let io = |socket: &std::path::Path| {
            let socket = socket.to_path_buf();
            move |source| ClientError::Io { socket, source }
        };
        self.stream
            .set_read_timeout(None)
            .map_err(io(&self.socket))?;
        self.send(&request)?;
        for line in BufReader::new(&self.stream).lines() {
            let line = line.map_err(io(&self.socket))?;
            match self.parse(&line)? {
                Response::Error { message } => return Err(ClientError::Refused(message)),
                response => {
                    if !each(response) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_string(&Envelope {
            version: PROTOCOL_VERSION,
            body: request,
        })
        .expect("requests serialize");
        line.push('\n');
        self.stream
            .write_all(line.as_bytes())
            .map_err(|source| ClientError::Io {
                socket: self.socket.clone(),
                source,
            })
    }

    fn parse(&self, line: &str) -> Result<Response, ClientError> {
        let envelope: Envelope<Response> =
            serde_json::from_str(line).map_err(|err| ClientError::Garbled {
                socket: self.socket.clone(),
                detail: err.to_string(),
            })?;
        if envelope.version != PROTOCOL_VERSION {
            return Err(ClientError::Garbled {
                socket: self.socket.clone(),
                detail: format!(
                    "protocol version {}, this command speaks {PROTOCOL_VERSION}",
                    envelope.version
                ),
            });
        }
        Ok(envelope.body)
    }

    /// Sends one request and reads its response. An error response becomes
    /// [`ClientError::Refused`] with the agent's message.
    pub fn call(mut self, request: Request) -> Result<Response, ClientError> {
        self.send(&request)?;
        let mut answer = String::new();
        BufReader::new(&self.stream)
            .read_line(&mut answer)
            .map_err(|source| ClientError::Io {
                socket: self.socket.clone(),
                source,
            })?;
        if answer.is_empty() {
            return Err(ClientError::Garbled {
                socket: self.socket.clone(),
                detail: "it closed the connection without answering".into(),
            });
        }
        match self.parse(&answer)? {
            Response::Error { message } => Err(ClientError::Refused(message)),
            response => Ok(response),
        }
    }
}
