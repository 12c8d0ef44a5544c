"""The files a run makes: their names, formats, readers and writers."""
