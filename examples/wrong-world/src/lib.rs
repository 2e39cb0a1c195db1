//! A component built against a future `wmr:mapreduce@0.2.0` whose `map`
//! takes different arguments: validation must refuse it by name and version.
wit_bindgen::generate!({
    inline: "
        package wmr:mapreduce@0.2.0;
        interface mapper {
            %map: func(key: string, offset: u64, value: list<u8>) -> result<_, string>;
        }
        world map-task { export mapper; }
    ",
});

struct Future;

impl exports::wmr::mapreduce::mapper::Guest for Future {
    fn map(_key: String, _offset: u64, _value: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
}

export!(Future);
