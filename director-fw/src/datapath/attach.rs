//! Attaching a program to an interface as a BPF link, which can be pinned so that the
//! attachment outlives the agent, and replacing the program under a pinned link atomically
//! (`BPF_LINK_UPDATE`) when a new object takes over.

use aya::programs::{
    links::{FdLink, LinkOrder, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions, TcAttachType},
    xdp::XdpLink,
    ProgramError, SchedClassifier, Xdp, XdpMode,
};
use serde::{Deserialize, Serialize};

use super::{load::Programs, Datapath, DatapathError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// Native (driver) XDP; falls back to generic XDP where the driver has no XDP support.
    Xdp,
    /// Generic (skb) XDP.
    XdpGeneric,
    /// TC ingress (TCX).
    Tc,
}

impl AttachMode {
    pub const ALL: [AttachMode; 3] = [AttachMode::Xdp, AttachMode::XdpGeneric, AttachMode::Tc];

    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Xdp => "xdp",
            AttachMode::XdpGeneric => "xdp-generic",
            AttachMode::Tc => "tc",
        }
    }

    pub fn from_name(name: &str) -> Option<AttachMode> {
        AttachMode::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The name of the program this mode attaches.
    pub fn program(self) -> &'static str {
        match self {
            AttachMode::Xdp | AttachMode::XdpGeneric => director_fw_common::maps::XDP_PROGRAM,
            AttachMode::Tc => director_fw_common::maps::TC_PROGRAM,
        }
    }

    /// The programs this mode verifies.
    pub fn programs(self) -> Programs {
        match self {
            AttachMode::Xdp | AttachMode::XdpGeneric => Programs::Xdp,
            AttachMode::Tc => Programs::Tc,
        }
    }
}

/// The index of an interface in the caller's network namespace (unlike /sys/class/net, which
/// belongs to the mount namespace); 0 when there is none.
pub(super) fn interface_index(iface: &str) -> u32 {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return 0;
    };
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// Attaches an XDP program to one interface and hands back the link, for the caller to pin.
/// Native XDP that the driver cannot do falls back to generic XDP; the message says so.
pub(super) fn attach_xdp(
    xdp: &mut Xdp,
    iface: &str,
    mode: AttachMode,
) -> Result<(FdLink, Option<String>), DatapathError> {
    let attach_err = |mode: AttachMode, source| DatapathError::Attach {
        iface: iface.to_string(),
        mode: mode.name(),
        source,
    };
    let mut warning = None;
    let id = match (mode, xdp.attach(iface, XdpMode::Driver)) {
        (AttachMode::Xdp, Ok(id)) => id,
        (AttachMode::Xdp, Err(native)) => {
            warning = Some(format!(
                "{iface}: native XDP is not available ({native}); attached in generic (skb) mode instead, which is slower. Use --mode tc or a driver with XDP support for line rate."
            ));
            xdp.attach(iface, XdpMode::Skb)
                .map_err(|e| attach_err(AttachMode::XdpGeneric, e))?
        }
        _ => xdp
            .attach(iface, XdpMode::Skb)
            .map_err(|e| attach_err(mode, e))?,
    };
    let link = xdp.take_link(id)?;
    Ok((fd_link(iface, link)?, warning))
}

/// Attaches a TC program to one interface's ingress as a TCX link and hands back the link.
/// TCX is asked for by trying it, not by the kernel's version (which misses backports, such
/// as RHEL's): only a BPF link outlives the agent, and a kernel without TCX gets a refusal
/// that names it.
pub(super) fn attach_tc(tc: &mut SchedClassifier, iface: &str) -> Result<FdLink, DatapathError> {
    let tcx = TcAttachOptions::TcxOrder(LinkOrder::default());
    let id = tc
        .attach_with_options(iface, TcAttachType::Ingress, tcx)
        .map_err(|source| {
            // A kernel without TCX does not know the attach type.
            let unknown = match &source {
                ProgramError::SyscallError(err) => matches!(
                    err.io_error.raw_os_error(),
                    Some(libc::EINVAL | libc::EOPNOTSUPP)
                ),
                _ => false,
            };
            let iface = iface.to_string();
            if unknown {
                DatapathError::NoTcx { iface, source }
            } else {
                DatapathError::Attach {
                    iface,
                    mode: AttachMode::Tc.name(),
                    source,
                }
            }
        })?;
    let link = tc.take_link(id)?;
    fd_link(iface, link)
}

/// A link that can be pinned, or the refusal to run without one.
fn fd_link<L>(iface: &str, link: L) -> Result<FdLink, DatapathError>
where
    FdLink: TryFrom<L>,
{
    FdLink::try_from(link).map_err(|_| DatapathError::NotALink {
        iface: iface.to_string(),
    })
}

impl Datapath {
    /// Attaches to one interface and hands back the link, for the caller to pin.
    pub fn attach(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(FdLink, Option<String>), DatapathError> {
        if interface_index(iface) == 0 {
            return Err(DatapathError::NoInterface(iface.to_string()));
        }
        match mode {
            AttachMode::Xdp | AttachMode::XdpGeneric => attach_xdp(self.xdp_mut()?, iface, mode),
            AttachMode::Tc => Ok((attach_tc(self.tc_mut()?, iface)?, None)),
        }
    }

    /// Puts this datapath's program under a pinned link in place of the one there, in one
    /// step: packets see the old program or the new one, and the link (and its pin) stays.
    pub fn replace(&mut self, link: PinnedLink, mode: AttachMode) -> Result<(), DatapathError> {
        let link = FdLink::from(link);
        match mode {
            AttachMode::Xdp | AttachMode::XdpGeneric => {
                let xdp = self.xdp_mut()?;
                let id = xdp.attach_to_link(XdpLink::try_from(link)?)?;
                // Taken back so that dropping the program does not detach it; the pin holds it.
                drop(FdLink::try_from(xdp.take_link(id)?)?);
            }
            AttachMode::Tc => {
                let tc = self.tc_mut()?;
                let id = tc.attach_to_link(SchedClassifierLink::try_from(link)?)?;
                drop(FdLink::try_from(tc.take_link(id)?)?);
            }
        }
        Ok(())
    }
}

/// Puts the pinned program `program` back under the pinned `link` (a hand-over that failed
/// half-way is undone with this).
pub(super) fn put_back(
    program: &std::path::Path,
    link: &super::LinkPin,
) -> Result<(), DatapathError> {
    let fd = FdLink::from(PinnedLink::from_pin(&link.path)?);
    match link.mode {
        AttachMode::Xdp | AttachMode::XdpGeneric => {
            let mut xdp = Xdp::from_pin(program, aya_obj::programs::XdpAttachType::Interface)?;
            let id = xdp.attach_to_link(XdpLink::try_from(fd)?)?;
            drop(FdLink::try_from(xdp.take_link(id)?)?);
        }
        AttachMode::Tc => {
            let mut tc = SchedClassifier::from_pin(program)?;
            let id = tc.attach_to_link(SchedClassifierLink::try_from(fd)?)?;
            drop(FdLink::try_from(tc.take_link(id)?)?);
        }
    }
    Ok(())
}
