//! Memory-mapped array maps (`BPF_F_MMAPABLE`): the agent writes a generation's host table
//! and port array with a copy, where a syscall per entry would take most of a second at a
//! million peers.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use aya::maps::Map;

use super::{load::data, DatapathError};

/// An array map mapped into this process. Element `i` lies at `i * stride`: the kernel rounds
/// each value up to 8 bytes.
pub struct Mapped {
    base: NonNull<u8>,
    len: usize,
    stride: usize,
    entries: u32,
    // Keeps the map (and its fd) alive as long as the mapping.
    _map: Map,
}

// SAFETY: the mapping is owned by this value alone; writers need `&mut self`.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Maps the whole array, whose values must be `value_size` bytes.
    pub fn new(map: Map, value_size: usize) -> Result<Mapped, DatapathError> {
        let d = data(&map)?;
        let info = d.info()?;
        const BPF_F_MMAPABLE: u32 = 1 << 10;
        if info.value_size() as usize != value_size || info.map_flags() & BPF_F_MMAPABLE == 0 {
            return Err(DatapathError::Pins(format!(
                "map {:?} has {} B values and flags {:#x}; this agent writes {value_size} B values through mmap",
                info.name_as_str().unwrap_or("?"),
                info.value_size(),
                info.map_flags()
            )));
        }
        let entries = info.max_entries();
        let stride = value_size.next_multiple_of(8);
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = (entries as usize * stride).next_multiple_of(page).max(page);
        let fd = d.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the map's own fd, of at most the size the kernel
        // allocated for it (max_entries times the rounded value size, page-aligned).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DatapathError::Io(
                "mapping a host table or the port array into the agent".into(),
                std::io::Error::last_os_error(),
            ));
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| {
            DatapathError::Io("mmap".into(), std::io::Error::other("null mapping"))
        })?;
        Ok(Mapped {
            base,
            len,
            stride,
            entries,
            _map: map,
        })
    }

    pub fn entries(&self) -> u32 {
        self.entries
    }

    pub fn map(&self) -> &Map {
        &self._map
    }

    /// Writes `values` at elements `start..`, and `T::default()` on the `clear` elements after
    /// them. Elements outside the array are refused, not written.
    pub fn write<T: aya::Pod + Default>(
        &mut self,
        start: u32,
        values: &[T],
        clear: usize,
    ) -> Result<(), DatapathError> {
        assert!(std::mem::size_of::<T>() <= self.stride);
        let end = start as usize + values.len() + clear;
        if end > self.entries as usize {
            return Err(DatapathError::DoesNotFit(format!(
                "{end} entries in a table of {}",
                self.entries
            )));
        }
        let empty = T::default();
        for (i, value) in values
            .iter()
            .chain(std::iter::repeat_n(&empty, clear))
            .enumerate()
        {
            let offset = (start as usize + i) * self.stride;
            // SAFETY: `offset + stride <= len` by the check above; the kernel reads these
            // elements only once the generation they belong to is made active, after this
            // write (or after a grace period for the one it has just left).
            unsafe {
                self.base
                    .as_ptr()
                    .add(offset)
                    .cast::<T>()
                    .write_unaligned(*value)
            };
        }
        Ok(())
    }

    /// Reads element `index`.
    pub fn read<T: aya::Pod>(&self, index: u32) -> Option<T> {
        if index >= self.entries || std::mem::size_of::<T>() > self.stride {
            return None;
        }
        let offset = index as usize * self.stride;
        // SAFETY: in bounds, as checked above.
        Some(unsafe { self.base.as_ptr().add(offset).cast::<T>().read_unaligned() })
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
