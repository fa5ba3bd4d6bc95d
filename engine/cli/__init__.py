"""The command lines: ``engine-train`` (`train`), ``engine-gradcheck`` (`gradcheck`) and
``python -m engine.cli.data`` (`data`). Each module's one public name is ``main(argv)``,
which returns the exit status."""
