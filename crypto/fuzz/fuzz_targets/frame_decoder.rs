//! The frame decoder on arbitrary bytes, cut into reads at fuzzer-chosen points. Checks, beyond
//! "no panic": the same frames come out however the stream is cut, and the decoder never holds
//! more than one frame.
#![no_main]

use lethe_crypto::framing::{FrameDecoder, FRAME_MAX_LEN};
use libfuzzer_sys::fuzz_target;

type Out = Vec<Result<(lethe_crypto::framing::FrameHeader, Vec<u8>), lethe_crypto::framing::SkippedFrame>>;

fn run(chunks: &[&[u8]]) -> (Out, Option<lethe_crypto::framing::FatalFrameError>) {
    let mut dec = FrameDecoder::new();
    let mut out = Vec::new();
    let mut fatal = None;
    for c in chunks {
        match dec.feed(c, |r| out.push(r.map(|f| (f.header, f.packet.to_vec())))) {
            Ok(_) => {}
            Err(e) => fatal = Some(e),
        }
        assert!(dec.buffered_len() < FRAME_MAX_LEN);
    }
    (out, fatal)
}

fuzz_target!(|data: &[u8]| {
    // First byte picks the cut stride, the rest is the stream.
    let Some((&stride, stream)) = data.split_first() else { return };
    let stride = usize::from(stride).max(1);
    let whole = run(&[stream]);
    let pieces: Vec<&[u8]> = stream.chunks(stride).collect();
    let cut = run(&pieces);
    assert_eq!(whole, cut);
});
