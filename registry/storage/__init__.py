"""Where a registry's rows and artifacts live: the database, its schema, the artifact store."""
