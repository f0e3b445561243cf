//! The kernel program's rare events (aya-log, see the eBPF crate's `rare` module), read from
//! the `AYA_LOGS` ring buffer of the program in force and logged through `tracing`, marked as
//! the kernel's.

use std::os::fd::{AsRawFd, RawFd};

use aya::programs::ProgramInfo;
use aya_log::EbpfLogger;

use super::{AttachMode, DatapathError, Pins};

pub struct KernelLog {
    logger: EbpfLogger<Forward>,
}

impl KernelLog {
    /// The log of the program that `mode`'s links run.
    pub fn open(pins: &Pins, mode: AttachMode) -> Result<KernelLog, DatapathError> {
        let program = KernelLog::program_in_force(pins, mode)?;
        let logger = EbpfLogger::init_from_id_with_logger(program, Forward)
            .map_err(|err| DatapathError::Pins(format!("the kernel program's log: {err}")))?;
        Ok(KernelLog { logger })
    }

    /// The id of the program `mode`'s links run: it changes when a larger policy or an
    /// upgrade puts another program under them, and its log with it.
    pub fn program_in_force(pins: &Pins, mode: AttachMode) -> Result<u32, DatapathError> {
        let path = pins
            .program_path(mode.program())
            .ok_or_else(|| DatapathError::Pins(format!("no pinned {} program", mode.program())))?;
        Ok(ProgramInfo::from_pin(path)?.id())
    }

    /// Logs every record waiting.
    pub fn flush(&mut self) {
        self.logger.flush();
    }
}

impl AsRawFd for KernelLog {
    fn as_raw_fd(&self) -> RawFd {
        self.logger.as_raw_fd()
    }
}

/// aya-log's records, as `tracing` events of the agent's log.
struct Forward;

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!("kernel: {message}"),
            log::Level::Warn => tracing::warn!("kernel: {message}"),
            log::Level::Info => tracing::info!("kernel: {message}"),
            log::Level::Debug => tracing::debug!("kernel: {message}"),
            log::Level::Trace => tracing::trace!("kernel: {message}"),
        }
    }

    fn flush(&self) {}
}
