from servecmp.cli import main

main()
