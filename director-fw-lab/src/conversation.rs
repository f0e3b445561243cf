//! A TCP connection held open between two lab hosts, to show that an established connection
//! keeps working while the firewall's agent is killed, restarted or upgraded.

use crate::{in_netns, Host};
use anyhow::{ensure, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

pub struct Conversation {
    client: TcpStream,
    server: TcpStream,
    rounds: u64,
    what: String,
}

impl Conversation {
    /// Listens in `to`'s namespace, connects from `from`'s, and accepts: an established
    /// connection, or an error within about `timeout`. Every read is bounded by `timeout`.
    pub fn open(
        from: &Host,
        to: &Host,
        port: u16,
        ipv6: bool,
        timeout: Duration,
    ) -> Result<Conversation> {
        let dst = SocketAddr::new(to.addr(ipv6), port);
        let what = format!(
            "tcp {}({}) -> {}({dst})",
            from.role,
            from.addr(ipv6),
            to.role
        );
        let listener = in_netns(&to.ns, move || Ok(TcpListener::bind(dst)?))
            .with_context(|| format!("listening for {what}"))?;
        let client = in_netns(&from.ns, move || {
            Ok(TcpStream::connect_timeout(&dst, timeout)?)
        })
        .with_context(|| format!("connecting {what}"))?;
        // The connection is established, so it is already in the accept queue.
        let (server, _) = listener
            .accept()
            .with_context(|| format!("accepting {what}"))?;
        for stream in [&client, &server] {
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
        }
        Ok(Conversation {
            client,
            server,
            rounds: 0,
            what,
        })
    }

    /// One round: a message each way, each checked; an error when either is lost.
    pub fn exchange(&mut self) -> Result<()> {
        self.rounds += 1;
        let round = self.rounds;
        let what = &self.what;
        let ask = format!("round {round:08}\n");
        let answer = format!("reply {round:08}\n");
        self.client.write_all(ask.as_bytes())?;
        let mut got = vec![0; ask.len()];
        self.server
            .read_exact(&mut got)
            .with_context(|| format!("{what}: round {round}: the request did not arrive"))?;
        ensure!(
            got == ask.as_bytes(),
            "{what}: round {round}: request garbled"
        );
        self.server.write_all(answer.as_bytes())?;
        let mut got = vec![0; answer.len()];
        self.client
            .read_exact(&mut got)
            .with_context(|| format!("{what}: round {round}: the reply did not arrive"))?;
        ensure!(
            got == answer.as_bytes(),
            "{what}: round {round}: reply garbled"
        );
        Ok(())
    }

    /// Rounds completed so far.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }
}
