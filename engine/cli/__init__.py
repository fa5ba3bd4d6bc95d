"""The command lines: ``engine-train`` (`train`), ``engine-gradcheck`` (`gradcheck`) and
``engine-data`` (`data`). Each module's one public name is ``main(argv)``,
which returns the exit status."""
