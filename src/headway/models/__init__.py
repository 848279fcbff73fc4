"""The model layer: loading a model by alias, folder or hub id (:mod:`.loading`), where each
family keeps its heads (:mod:`.architectures`), the built-in model (:mod:`.builtin`), adapters
loaded onto their base (:mod:`.adapters`), checks before loading (:mod:`.checks`), placement
over devices (:mod:`.placement`) and FSDP2-sharded weights (:mod:`.sharding`)."""
