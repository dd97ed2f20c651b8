ic
