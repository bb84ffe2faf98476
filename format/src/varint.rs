//! Zig-zag varints as used by Kafka's record format (protobuf style, signed).

/// Appends `value` zig-zag encoded.
pub fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bytes [`put_varint`] writes for `value`.
pub fn varint_len(value: i64) -> usize {
    let v = ((value << 1) ^ (value >> 63)) as u64;
    // One byte per started 7 bits, and at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Decodes a zig-zag varint at the start of `input`; returns it and the bytes it used, or `None`
/// when the input ends first or the encoding exceeds 10 bytes.
pub fn get_varint(input: &[u8]) -> Option<(i64, usize)> {
    let mut raw: u64 = 0;
    for (i, &byte) in input.iter().enumerate().take(10) {
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let value = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_length_is_what_put_writes() {
        let mut values = vec![0, 1, -1, 63, -64, 64, -65, i64::MAX, i64::MIN];
        for shift in 0..63 {
            values.extend([1i64 << shift, (1i64 << shift) - 1, -(1i64 << shift)]);
        }
        for v in values {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(varint_len(v), out.len(), "{v}");
        }
    }

    #[test]
    fn round_trips_edge_values() {
        for v in [
            0,
            1,
            -1,
            63,
            -64,
            64,
            300,
            -300,
            i32::MAX as i64,
            i64::MAX,
            i64::MIN,
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(get_varint(&buf), Some((v, buf.len())), "value {v}");
        }
        // Kafka's documented encodings: 1 -> 0x02, -1 -> 0x01, 150 (zig-zag 300) -> ac 02.
        let mut buf = Vec::new();
        put_varint(&mut buf, 150);
        assert_eq!(buf, [0xac, 0x02]);
        assert_eq!(get_varint(&[0x80]), None);
    }
}
