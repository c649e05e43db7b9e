"""The registry domain: adapters, versions, aliases, blobs; services over a database and a blob store."""
