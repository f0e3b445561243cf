//! TC mode on a kernel without TCX (before 6.6, unless backported): a direct-action `cls_bpf`
//! filter on the interface's `clsact` qdisc, over netlink.
//!
//! Such a filter is not a BPF link, so nothing can be pinned for it, but it holds its program
//! (and, through it, every map) for as long as it is on the interface: it outlives the agent
//! as a pinned link does. The instance's one filter per interface sits at a fixed priority and
//! handle, so that any agent finds it again, replaces its program in one step (`cls_bpf`
//! swaps the program of an existing filter under RCU, as `BPF_LINK_UPDATE` does for a link)
//! and removes it on `detach`. Priority 1 runs before every other filter on the hook.

use std::io;

use aya::programs::{
    links::Link,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    ProgramError, SchedClassifier, TcAttachType,
};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    tc::{TcAttribute, TcFilterBpf, TcFilterBpfOption, TcHandle as NlHandle, TcMessage, TcOption},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::attach::interface_index;

/// The filter's priority: the first on the ingress hook.
pub const PRIORITY: u16 = 1;
/// The filter's handle at that priority; another program's filter may share the priority.
pub const HANDLE: u32 = 0xd1f;

fn handle() -> TcHandle {
    TcHandle::new((HANDLE >> 16) as u16, HANDLE as u16)
}

/// Attaches `tc` to the ingress of `iface` as the instance's filter, creating the `clsact`
/// qdisc if the interface has none. Dropping the returned link removes the filter.
pub(super) fn attach(
    tc: &mut SchedClassifier,
    iface: &str,
) -> Result<SchedClassifierLink, ProgramError> {
    match tc::qdisc_add_clsact(iface) {
        Err(TcError::NetlinkError(err)) if err.raw_os_error() == Some(libc::EEXIST) => {}
        other => other?,
    }
    let options = TcAttachOptions::Netlink(NlOptions {
        priority: PRIORITY,
        handle: handle(),
        ..NlOptions::default()
    });
    let id = tc.attach_with_options(iface, TcAttachType::Ingress, options)?;
    tc.take_link(id)
}

/// Whether attaching failed because a filter is already at the instance's priority and handle.
pub(super) fn exists_error(err: &ProgramError) -> bool {
    matches!(err, ProgramError::TcError(TcError::NetlinkError(err))
        if err.raw_os_error() == Some(libc::EEXIST))
}

/// Keeps a filter on its interface after the agent lets go of it (aya removes a filter whose
/// link is dropped).
pub(super) fn keep(link: SchedClassifierLink) {
    std::mem::forget(link);
}

/// The instance's filter on `iface`, as aya names an existing one.
fn existing(iface: &str) -> Result<SchedClassifierLink, io::Error> {
    SchedClassifierLink::attached(iface, TcAttachType::Ingress, PRIORITY, handle(), None)
}

/// Puts `tc` in place of the program of the instance's filter on `iface`, in one step.
pub(super) fn replace(tc: &mut SchedClassifier, iface: &str) -> Result<(), ProgramError> {
    let link = existing(iface).map_err(|err| ProgramError::from(TcError::IoError(err)))?;
    let id = tc.attach_to_link(link)?;
    keep(tc.take_link(id)?);
    Ok(())
}

/// Removes the instance's filter from `iface`, if it is there.
pub(super) fn remove(iface: &str) -> Result<(), ProgramError> {
    if installed(iface)?.is_none() {
        return Ok(());
    }
    existing(iface)
        .map_err(|err| ProgramError::from(TcError::IoError(err)))?
        .detach()
}

/// The id of the program that the instance's filter on `iface` runs, or `None` when the
/// interface or the filter is gone (a recreated interface, or `tc qdisc del`).
pub(super) fn installed(iface: &str) -> Result<Option<u32>, io::Error> {
    let ifindex = interface_index(iface);
    if ifindex == 0 {
        return Ok(None);
    }
    let mut request = TcMessage::with_index(ifindex as i32);
    request.header.parent = NlHandle {
        major: NlHandle::CLSACT.major,
        minor: NlHandle::MIN_INGRESS,
    };
    for message in dump(RouteNetlinkMessage::GetTrafficFilter(request))? {
        let RouteNetlinkMessage::NewTrafficFilter(filter) = message else {
            continue;
        };
        // tcm_info holds the priority above the protocol.
        let ours = (filter.header.info >> 16) as u16 == PRIORITY
            && u32::from(filter.header.handle) == HANDLE
            && filter
                .attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(kind) if kind == TcFilterBpf::KIND));
        if !ours {
            continue;
        }
        let program = filter.attributes.iter().find_map(|a| match a {
            TcAttribute::Options(options) => options.iter().find_map(|o| match o {
                TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(*id),
                _ => None,
            }),
            _ => None,
        });
        return Ok(Some(program.unwrap_or(0)));
    }
    Ok(None)
}

/// Sends a dump request and collects the answer's messages.
fn dump(request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, io::Error> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let invalid = |err: netlink_packet_core::DecodeError| io::Error::other(err.to_string());
    let mut messages = Vec::new();
    let mut received = vec![0; 64 * 1024];
    // An interface holds a handful of filters; the bound only stops a kernel that never ends.
    for _ in 0..1024 {
        let size = socket.recv(&mut &mut received[..], 0)?;
        let mut at = 0;
        while at < size {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&received[at..size])
                .map_err(invalid)?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(messages),
                NetlinkPayload::Error(err) if err.code.is_some() => return Err(err.to_io()),
                NetlinkPayload::InnerMessage(inner) => messages.push(inner),
                _ => {}
            }
            if length == 0 {
                break;
            }
            at += length;
        }
    }
    Err(io::Error::other("the kernel's filter dump did not end"))
}
