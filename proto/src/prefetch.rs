//! A hint to the CPU that a later cache line of a record will be read
//! soon: for the 100,000-peer simulation, whose records are larger than
//! one line and far more than the CPU's caches hold.
//!
//! The `prefetch-index` crate asks only for the line a record starts on.
//! On a CPU that fetches lines one at a time (the AMD EPYC the simulation
//! was profiled on), the next line of the same record is a cache miss
//! of its own.

/// Asks the CPU for cache line `line` (0 is where the record starts) of
/// `records[i]`. Changes nothing; does nothing off x86-64.
#[allow(unsafe_code)]
pub fn prefetch_line<T>(records: &[T], i: usize, line: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let at = records
            .as_ptr()
            .wrapping_add(i)
            .cast::<i8>()
            .wrapping_add(64 * line);
        // SAFETY: a prefetch is a hint: it reads nothing into the program
        // and cannot fault, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(at) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (records, i, line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_index_and_line_is_only_a_hint() {
        let records = vec![[0u64; 24]; 4];
        for i in 0..8 {
            for line in 0..4 {
                prefetch_line(&records, i, line);
            }
        }
        prefetch_line::<u8>(&[], 0, 1);
        assert_eq!(records[3][23], 0);
    }
}
