//! A component built against the previous `wmr:mapreduce@0.1.0`, whose
//! `reduce` was pushed `list<group>` batches: validation must refuse it as
//! a map and as a reduce, by name and both versions.
wit_bindgen::generate!({
    inline: "
        package wmr:mapreduce@0.1.0;
        interface host {
            log: func(message: string);
        }
        interface types {
            record group { key: list<u8>, values: list<list<u8>> }
        }
        interface mapper {
            %map: func(key: list<u8>, value: list<u8>) -> result<_, string>;
        }
        interface reducer {
            use types.{group};
            reduce: func(groups: list<group>) -> result<_, string>;
        }
        world job { import host; export mapper; export reducer; }
    ",
});

struct Old;

impl exports::wmr::mapreduce::mapper::Guest for Old {
    fn map(_key: Vec<u8>, _value: Vec<u8>) -> Result<(), String> {
        wmr::mapreduce::host::log("an old map");
        Ok(())
    }
}

impl exports::wmr::mapreduce::reducer::Guest for Old {
    fn reduce(_groups: Vec<wmr::mapreduce::types::Group>) -> Result<(), String> {
        Ok(())
    }
}

export!(Old);
