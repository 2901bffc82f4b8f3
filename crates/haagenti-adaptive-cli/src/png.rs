//! A minimal PNG writer for the report's height maps: 8-bit greyscale, one IDAT of stored
//! (uncompressed) deflate blocks. A report's pictures are a few hundred KiB at most, so
//! compression would buy little; writing the format directly keeps the CLI free of an image
//! crate and its dependencies.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use haagenti_adaptive::kernels::io::{AtomicFile, check_output};

/// CRC-32 (ISO 3309, as PNG chunks use), bit by bit: the pictures are small.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for part in parts {
        for &b in *part {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
    }
    !c
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    // Chunks here are at most one picture's bytes, far below 2^31.
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
}

/// The PNG file of an 8-bit greyscale picture, `pixels` row by row.
///
/// Callers pass `pixels.len() == width * height`, width and height positive.
pub(crate) fn encode_grey(width: usize, height: usize, pixels: &[u8]) -> Vec<u8> {
    debug_assert_eq!(pixels.len(), width * height);
    let mut raw = Vec::with_capacity((width + 1) * height);
    for row in pixels.chunks_exact(width) {
        raw.push(0); // filter type None
        raw.extend_from_slice(row);
    }
    // zlib: CMF/FLG for deflate with a 32 KiB window and no dictionary, stored blocks of at most
    // 65 535 bytes, then the Adler-32 of the raw data.
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8 bits, greyscale, deflate, filter 0, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Writes `bytes` to `path` through `kernels::io` (checked path, temporary file beside it,
/// renamed into place), as every file the project writes.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let target = check_output(path, &[]).with_context(|| format!("{}", path.display()))?;
    let mut file = AtomicFile::create(&target)?;
    file.file()
        .write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    file.commit()?;
    Ok(())
}

/// Writes a greyscale PNG ([`encode_grey`]) with [`write_atomic`].
pub(crate) fn write_grey(
    path: &Path,
    width: usize,
    height: usize,
    pixels: &[u8],
) -> anyhow::Result<()> {
    write_atomic(path, &encode_grey(width, height, pixels))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back what `encode_grey` writes (stored blocks only), checking every CRC.
    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let mut at = 8;
        let (mut w, mut h, mut z) = (0, 0, Vec::new());
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let kind = &png[at + 4..at + 8];
            let data = &png[at + 8..at + 8 + len];
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc, crc32(&[kind, data]));
            match kind {
                b"IHDR" => {
                    w = u32::from_be_bytes(data[0..4].try_into().unwrap());
                    h = u32::from_be_bytes(data[4..8].try_into().unwrap());
                    assert_eq!(&data[8..], &[8, 0, 0, 0, 0]);
                }
                b"IDAT" => z.extend_from_slice(data),
                _ => {}
            }
            at += 12 + len;
        }
        // zlib's header: CMF FLG with (CMF * 256 + FLG) a multiple of 31.
        assert_eq!((u32::from(z[0]) * 256 + u32::from(z[1])) % 31, 0);
        assert_eq!(z[0] & 0x0F, 8, "deflate");
        let mut raw = Vec::new();
        let mut p = 2;
        loop {
            let last = z[p] & 1;
            let len = u16::from_le_bytes([z[p + 1], z[p + 2]]);
            let nlen = u16::from_le_bytes([z[p + 3], z[p + 4]]);
            assert_eq!(len, !nlen);
            raw.extend_from_slice(&z[p + 5..p + 5 + len as usize]);
            p += 5 + len as usize;
            if last == 1 {
                break;
            }
        }
        assert_eq!(
            u32::from_be_bytes(z[p..p + 4].try_into().unwrap()),
            adler32(&raw)
        );
        let pixels = raw
            .chunks_exact(w as usize + 1)
            .flat_map(|r| {
                assert_eq!(r[0], 0);
                r[1..].to_vec()
            })
            .collect();
        (w, h, pixels)
    }

    #[test]
    fn known_checksums() {
        // The standard check values of CRC-32 and Adler-32.
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    #[test]
    fn pictures_round_trip_across_several_blocks() {
        for (w, h) in [(1, 1), (3, 2), (512, 300)] {
            let px: Vec<u8> = (0..w * h).map(|i| (i * 37 % 251) as u8).collect();
            let (gw, gh, got) = decode(&encode_grey(w, h, &px));
            assert_eq!((gw as usize, gh as usize), (w, h));
            assert_eq!(got, px);
        }
    }
}
