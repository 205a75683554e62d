"""agrad's reverse-mode tape engine, written against the Array API standard."""
