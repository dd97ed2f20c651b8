yy
