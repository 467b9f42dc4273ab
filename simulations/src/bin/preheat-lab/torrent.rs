//! A minimal BitTorrent metainfo writer for the reference scenario: multi-file torrent, SHA-1
//! piece hashes, one tracker URL, `private` set (no DHT/PEX outside the tracker). SHA-1 is written
//! out here because no SHA-1 crate is in the dependency tree; it is checked against FIPS 180 vectors.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};

/// SHA-1 (FIPS 180-4) of `data`, streaming.
#[derive(Clone)]
pub struct Sha1 {
    h: [u32; 5],
    buf: Vec<u8>,
    len: u64,
}

impl Sha1 {
    pub fn new() -> Self {
        Self {
            h: [
                0x6745_2301,
                0xEFCD_AB89,
                0x98BA_DCFE,
                0x1032_5476,
                0xC3D2_E1F0,
            ],
            buf: Vec::with_capacity(64),
            len: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.buf.is_empty() {
            let take = (64 - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == 64 {
                let block = std::mem::take(&mut self.buf);
                self.block(&block);
            }
        }
        let mut blocks = data.chunks_exact(64);
        for b in &mut blocks {
            self.block(b);
        }
        self.buf.extend_from_slice(blocks.remainder());
    }

    pub fn finish(mut self) -> [u8; 20] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = vec![0x80u8];
        let used = (self.buf.len() + 1) % 64;
        pad.resize(1 + (if used <= 56 { 56 - used } else { 120 - used }), 0);
        pad.extend_from_slice(&bits.to_be_bytes());
        let len = self.len;
        self.update(&pad);
        self.len = len;
        let mut out = [0u8; 20];
        for (i, w) in self.h.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    fn block(&mut self, b: &[u8]) {
        let mut w = [0u32; 80];
        for (i, c) in b.chunks_exact(4).enumerate().take(16) {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut bb, mut c, mut d, mut e] = self.h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((bb & c) | (!bb & d), 0x5A82_7999),
                20..=39 => (bb ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((bb & c) | (bb & d) | (c & d), 0x8F1B_BCDC),
                _ => (bb ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = bb.rotate_left(30);
            bb = a;
            a = t;
        }
        for (h, v) in self.h.iter_mut().zip([a, bb, c, d, e]) {
            *h = h.wrapping_add(v);
        }
    }
}

fn bstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(s);
}

fn bint(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(format!("i{v}e").as_bytes());
}

/// A torrent over `files` (names relative to `dir`, in this order) named `name`.
pub struct Torrent {
    pub bytes: Vec<u8>,
    /// Hex SHA-1 of the bencoded info dictionary (what the tracker whitelist holds).
    pub info_hash: String,
}

/// Builds the metainfo for the files `dir/name/<file>`; pieces of `piece_len` bytes.
pub fn create(
    dir: &Path,
    name: &str,
    files: &[String],
    piece_len: u32,
    announce: &str,
) -> Result<Torrent> {
    let mut pieces = Vec::new();
    let mut piece = Sha1::new();
    let mut in_piece = 0usize;
    let mut lengths = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let path = dir.join(name).join(f);
        let mut file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut len = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            len += n as u64;
            let mut data = &buf[..n];
            while !data.is_empty() {
                let take = (piece_len as usize - in_piece).min(data.len());
                piece.update(&data[..take]);
                in_piece += take;
                data = &data[take..];
                if in_piece == piece_len as usize {
                    pieces.extend_from_slice(&std::mem::replace(&mut piece, Sha1::new()).finish());
                    in_piece = 0;
                }
            }
        }
        lengths.push(len);
    }
    if in_piece > 0 {
        pieces.extend_from_slice(&piece.finish());
    }
    // Keys of a bencoded dictionary are sorted.
    let mut info = b"d5:filesl".to_vec();
    for (f, len) in files.iter().zip(&lengths) {
        info.extend_from_slice(b"d6:length");
        bint(&mut info, *len);
        info.extend_from_slice(b"4:pathl");
        bstr(&mut info, f.as_bytes());
        info.extend_from_slice(b"ee");
    }
    info.extend_from_slice(b"e4:name");
    bstr(&mut info, name.as_bytes());
    info.extend_from_slice(b"12:piece length");
    bint(&mut info, u64::from(piece_len));
    info.extend_from_slice(b"6:pieces");
    bstr(&mut info, &pieces);
    info.extend_from_slice(b"7:privatei1ee");
    let mut h = Sha1::new();
    h.update(&info);
    let info_hash = hex(&h.finish());
    let mut bytes = b"d8:announce".to_vec();
    bstr(&mut bytes, announce.as_bytes());
    bytes.extend_from_slice(b"4:info");
    bytes.extend_from_slice(&info);
    bytes.push(b'e');
    Ok(Torrent { bytes, info_hash })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha1_hex(data: &[u8]) -> String {
        let mut h = Sha1::new();
        // Odd split to exercise the buffering.
        let (a, b) = data.split_at(data.len() / 3);
        h.update(a);
        h.update(b);
        hex(&h.finish())
    }

    #[test]
    fn fips_180_vectors() {
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            sha1_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        assert_eq!(
            sha1_hex(&vec![b'a'; 1_000_000]),
            "34aa973cd4c4daa4f61eeb2bdbad27316534016f"
        );
    }
}
