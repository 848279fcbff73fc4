"""The data layer: rows of a task (:mod:`.rows`), where they come from (:mod:`.tasks`,
:mod:`.sources`, :mod:`.user`, :mod:`.messages`), the one prompt/response encoding
(:mod:`.encoding`) and batches (:mod:`.batching`)."""
