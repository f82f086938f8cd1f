"""The peer plane: the libtorrent session, torrent metadata, and the HTTP server peers fetch from."""
