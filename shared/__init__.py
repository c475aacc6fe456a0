"""Code shared by predq's API and workers: settings, schemas, registry, job store."""
