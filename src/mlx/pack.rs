//! Packing of `bits`-wide codes into u32 words: each row is one little-endian,
//! least-significant-bit-first bit stream (element i occupies stream bits [i*bits, (i+1)*bits)).

/// Packs `codes` (each < 2^bits) of one row into `out` (`codes.len() * bits / 32` words).
pub fn pack_row(codes: &[u8], bits: u32, out: &mut [u32]) {
    debug_assert_eq!(codes.len() * bits as usize, out.len() * 32);
    // Widths that divide 32 fill each word with whole codes: a loop the compiler unrolls.
    if matches!(bits, 2 | 4 | 8) {
        let per_word = (32 / bits) as usize;
        for (w, chunk) in out.iter_mut().zip(codes.chunks_exact(per_word)) {
            *w = chunk.iter().enumerate().fold(0u32, |acc, (i, &c)| {
                acc | (u32::from(c) << (i as u32 * bits))
            });
        }
        return;
    }
    out.iter_mut().for_each(|w| *w = 0);
    let mut bit = 0usize;
    for &c in codes {
        let word = bit / 32;
        let shift = bit % 32;
        out[word] |= u32::from(c) << shift;
        if shift + bits as usize > 32 {
            out[word + 1] |= u32::from(c) >> (32 - shift);
        }
        bit += bits as usize;
    }
}

/// Packs one group's codes (u32, each < 2^bits) into its `codes.len() * bits / 32` words. A
/// group (32, 64 or 128 values) always fills whole words.
#[inline(always)]
pub fn pack_group(codes: &[u32], bits: u32, out: &mut [u32]) {
    match bits {
        2 => pack_whole::<16>(codes, 2, out),
        4 => pack_whole::<8>(codes, 4, out),
        8 => pack_whole::<4>(codes, 8, out),
        _ => {
            out.iter_mut().for_each(|w| *w = 0);
            let mut bit = 0usize;
            for &c in codes {
                let word = bit / 32;
                let shift = bit % 32;
                out[word] |= c << shift;
                if shift + bits as usize > 32 {
                    out[word + 1] |= c >> (32 - shift);
                }
                bit += bits as usize;
            }
        }
    }
}

/// Widths that divide 32: each word holds `N` whole codes.
#[inline(always)]
fn pack_whole<const N: usize>(codes: &[u32], bits: u32, out: &mut [u32]) {
    for (w, chunk) in out.iter_mut().zip(codes.chunks_exact(N)) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= c << (i as u32 * bits);
        }
        *w = acc;
    }
}

/// Packed u32 words, wherever they are: a `[u32]` being written (convert), or the
/// little-endian bytes of a mapped file, aligned or not (the engine).
pub trait PackedWords {
    fn word(&self, i: usize) -> u32;
}

impl PackedWords for [u32] {
    #[inline(always)]
    fn word(&self, i: usize) -> u32 {
        self[i]
    }
}

impl PackedWords for [u8] {
    #[inline(always)]
    fn word(&self, i: usize) -> u32 {
        u32::from_le_bytes([
            self[4 * i],
            self[4 * i + 1],
            self[4 * i + 2],
            self[4 * i + 3],
        ])
    }
}

/// The code of element `i` of a packed stream (rows fill whole words, so element `i` of row
/// `r` of `cols` columns is element `r * cols + i` of the matrix's stream).
#[inline(always)]
pub fn unpack_at<W: PackedWords + ?Sized>(words: &W, bits: u32, i: usize) -> u32 {
    let bit = i * bits as usize;
    let word = bit / 32;
    let shift = bit % 32;
    let mask = (1u64 << bits) - 1;
    let mut v = u64::from(words.word(word)) >> shift;
    if shift + bits as usize > 32 {
        v |= u64::from(words.word(word + 1)) << (32 - shift);
    }
    (v & mask) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_bit_example_from_the_reference() {
        let codes: Vec<u8> = [
            0u8, 7, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3,
            4, 5, 6, 7,
        ]
        .to_vec();
        let mut out = vec![0u32; 3];
        pack_row(&codes, 3, &mut out);
        assert_eq!(out[0], 0x88fa_c6b8);
    }

    #[test]
    fn round_trip_every_width() {
        for bits in [1u32, 2, 3, 4, 5, 6, 8] {
            let n = 64usize;
            let codes: Vec<u8> = (0..n).map(|i| ((i * 7 + 3) % (1 << bits)) as u8).collect();
            let mut words = vec![0u32; n * bits as usize / 32];
            pack_row(&codes, bits, &mut words);
            for (i, &c) in codes.iter().enumerate() {
                assert_eq!(
                    unpack_at(&words[..], bits, i),
                    u32::from(c),
                    "bits {bits} element {i}"
                );
            }
        }
        // 4-bit: element 0 is bits 0-3 of word 0, element 1 bits 4-7.
        let mut w = [0u32; 1];
        pack_row(&[1, 2, 0, 0, 0, 0, 0, 0], 4, &mut w);
        assert_eq!(w[0], 0x21);
    }
}
