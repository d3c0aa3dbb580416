//! Moving a mapping to a larger reservation (`Mapping::grow_capacity`):
//! every resident page is copied into the new memory with its protection,
//! and the flags carry over, so data, allocation and dirty state are kept.
//! Runs with the handler stopped and no other user of the mapping.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::flags::Residency;
use crate::geometry::Geometry;
use crate::sys::Region;

impl Engine {
    pub fn regrow(&mut self, capacity: u64) -> Result<()> {
        let too_large = |source| Error::CapacityUnavailable { capacity, source };
        let geo = Geometry::new(self.geo.page, self.geo.block, capacity)
            .ok_or_else(|| too_large(std::io::Error::from_raw_os_error(libc::ENOMEM)))?;
        let size = usize::try_from(geo.capacity)
            .map_err(|_| too_large(std::io::Error::from_raw_os_error(libc::ENOMEM)))?;
        let fill_buffers = crate::engine::fill_buffers_for(&geo)?;
        let region = Region::reserve(size, self.read_only).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOMEM) => too_large(e),
            _ => Error::Io(e),
        })?;
        self.uffd()
            .register(region.base(), region.len() as u64, self.read_only)?;
        self.lift_all_fences()?;
        // Writes the kernel let through are dirty only in its page tables,
        // which the copies below do not carry over: into the flags first.
        if let Err(e) = self.collect_written(0..self.geo.pages()) {
            let _ = self.uffd().unregister(region.base(), region.len() as u64);
            return Err(e.into());
        }
        // Take the flags out, so copying can update them; on an error they go
        // back as they are (still right for the old memory, which stays).
        let taken = crate::flags::Flags::new(self.geo, 0, &[]).map(|placeholder| {
            std::mem::replace(
                self.flags.get_mut().unwrap_or_else(|e| e.into_inner()),
                placeholder,
            )
        });
        let mut flags = match taken {
            Ok(flags) => flags,
            Err(e) => {
                let _ = self.uffd().unregister(region.base(), region.len() as u64);
                return Err(e.into());
            }
        };
        let grown = self
            .copy_into(&region, &mut flags)
            .and_then(|()| Ok(flags.regrown(geo)?));
        *self.flags.get_mut().unwrap_or_else(|e| e.into_inner()) = match grown {
            Ok(grown) => {
                self.page_states = grown.states();
                grown
            }
            Err(e) => {
                *self.flags.get_mut().unwrap_or_else(|e| e.into_inner()) = flags;
                let _ = self.uffd().unregister(region.base(), region.len() as u64);
                return Err(e);
            }
        };
        // The old memory goes: unregistered, then unmapped when `region` drops.
        let old = std::mem::replace(&mut self.region, region);
        let _ = self.uffd().unregister(old.base(), old.len() as u64);
        self.geo = geo;
        // Fills may be larger now: a small reservation's buffer was smaller.
        self.fill_buffers = fill_buffers;
        Ok(())
    }

    /// Copies every resident page into `region` with its protection, locked
    /// pages locked first so they are locked as they arrive.
    fn copy_into(&self, region: &Region, flags: &mut crate::flags::Flags) -> Result<()> {
        let page = self.geo.page as usize;
        for run in crate::store::runs((0..self.geo.pages()).filter(|&p| flags.is_locked(p))) {
            region.lock_on_fault(run.start as usize * page, (run.end - run.start) as usize * page)?;
        }
        let mut buf = vec![0u8; page];
        for p in flags.resident_pages(0..self.geo.pages(), |_, _| true) {
            if !self.copy_resident(flags, p, 0..self.geo.page, &mut buf)? {
                continue; // dropped behind our back: now absent (and recorded if dirty)
            }
            let protect = flags.residency(p) == Residency::Protected && !self.read_only;
            self.uffd()
                .copy(region.base() + p * self.geo.page, &buf, protect, true)?;
        }
        Ok(())
    }
}
