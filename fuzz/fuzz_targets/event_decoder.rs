//! Fuzzes the event decoder (`Event::from_slice`, what every Kafka message
//! and every `POST /v1/events` body goes through): any bytes give an event
//! or an error naming what was wrong, never a panic; an accepted event's
//! contract JSON (what the HTTP path produces to Kafka) decodes to the same
//! event, every prop to the last digit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nextbest::event::Event;

fuzz_target!(|data: &[u8]| {
    match Event::from_slice(data) {
        Ok(e) => {
            let again =
                Event::from_slice(&e.to_json_bytes()).expect("an accepted event round-trips");
            assert_eq!(e, again);
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
});
