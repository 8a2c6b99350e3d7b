--- ephrun's provider conformance spec, run against providers/__NAME__.lua:
---     ephrun __NAME___conformance_spec.lua              (all of it)
---     ephrun __NAME___conformance_spec.lua only=wait    (the tests whose name has "wait")
--- It launches, waits, logs in over SSH, lists by tag and destroys real
--- instances, so point the provider at a test account or a fake of your API.
return require("ephrun.authoring").conformance("__NAME__")
