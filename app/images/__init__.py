"""The image domain: generation jobs (kind `generate`), what they ask for, the images they
make, the providers that make them and where the images are kept. Built on app.queue."""
