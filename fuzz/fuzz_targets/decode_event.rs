//! Ring buffer records -> events -> messages, and per-client records ->
//! messages: any bytes, no panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pd_agent::snoop::{decode, Assembler, Message};
use pd_common::ClientRecord;

fuzz_target!(|data: &[u8]| {
    let mut asm = Assembler::default();
    let size = std::mem::size_of::<pd_common::PdEvent>();
    for chunk in data.chunks(size.max(1)) {
        if let Ok(ev) = decode(chunk) {
            let _ = asm.push(&ev);
        }
    }
    let rsize = std::mem::size_of::<ClientRecord>();
    for chunk in data.chunks_exact(rsize) {
        // SAFETY: ClientRecord is repr(C) plain data; any bytes are valid.
        let r: ClientRecord = unsafe { std::ptr::read_unaligned(chunk.as_ptr() as *const ClientRecord) };
        let m = Message::from_record(&r);
        assert!(m.prefixes.len() <= pd_common::RECORD_PREFIXES);
    }
});
