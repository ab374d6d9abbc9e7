from servecmp._cli.main import main

main()
